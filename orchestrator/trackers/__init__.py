"""The subscribers of everything a trial emits (orchestrator.driver.lifecycle.Sink): the store, the study,
TensorBoard, the progress line, MLflow."""
