"""Fuzz tests: generated hostile input through the decoder."""
