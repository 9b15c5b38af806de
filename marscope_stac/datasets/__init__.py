"""Data sets.

The synthetic demo world and its pipeline, and real Mars/Moon training data built from the
package registries.
"""
