"""cent-serve: serve LLMs on emulated CENT devices (CXL memory with near-bank PIM)."""
__version__ = "0.1.0"
