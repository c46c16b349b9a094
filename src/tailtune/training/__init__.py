"""Training: the trainer loop, its loader, resumable state, signals, model selection on the
validation split and the frozen-prefix feature cache."""
