"""Deployment formats beyond the numpy runtime: C source for one task's generated policy, and a compiled kernel."""
