"""`sscild phantom`: write a synthetic chest CT with exact truth (filled in by the phantom module)."""
