"""Pure maths on communication graphs: families, mixing matrices, spectral analysis, schedules."""
