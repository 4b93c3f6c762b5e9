"""Training support: sharding, checkpoints, metrics, preemption, state and step."""
