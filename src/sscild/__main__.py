"""`python -m sscild`: the command line."""
from .cli import main

main()
