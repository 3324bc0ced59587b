"""The spec language: the typed sweep spec (`sweeps.spec`) and the schema that builds it from YAML or JSON
(`sweeps.schema`), beside the shipped specs (`sweeps/*.yaml`). It imports only `trainer.config`, so the driver
(`orchestrator`) and the result views (`results`) both read it without an arrow pointing up."""
