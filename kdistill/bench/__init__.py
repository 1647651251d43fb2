"""Cost of a policy: parameters and FLOPs (``flops``), latency and the teacher-against-students report (``bench``)."""
