"""Fakes of the A1111/Forge `modules` package that extensions import."""
