"""The core every layer stands on.

Errors, bodies and their coordinate systems, safe file writing, text helpers, prompt templates
and the landform vocabulary.
"""
