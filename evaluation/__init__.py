"""Evaluation: slice metrics, whole-vertebra synthesis, grading and reports (library code the scripts call)."""
