"""The live service: sources in, batched inference, annotated video and counts out."""
