"""Training, evaluation and export of counting networks (imports Keras/TensorFlow freely)."""
