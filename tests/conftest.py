"""Shared fixtures. Importing cent_serve first pins BLAS to one thread before numpy loads."""
import cent_serve  # noqa: F401
