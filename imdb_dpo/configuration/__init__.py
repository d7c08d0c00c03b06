"""Configuration: the stages' arguments (dataclasses TrlParser reads configs and command lines into), the checks
that refuse a bad setting before any work, the batch-size derivation, the precision rule, and the user errors."""
