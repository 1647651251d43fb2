"""Distillation: students (``students``, ``hypernet``, ``encoders``), their losses, expert data collected from a
teacher (``expert_data``), the training loop (``training``) and DAgger rounds (``dagger``)."""
