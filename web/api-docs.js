// Renders /api/openapi.json with Swagger UI (loaded by api-docs.html). The validator badge
// is off: it would send the document to validator.swagger.io.
window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
