"""The escape fuzzer: the real CPU as the verifier's oracle (docs/escape-fuzzer.md).

Not part of the trusted core: it imports tmebox.trusted, never the other way round.
"""

from tmebox.fuzz.campaign import Escape, Stats, run
from tmebox.fuzz.generate import Candidate, Generator
from tmebox.fuzz.oracle import Oracle, OracleError, Outcome, Result, Sample

__all__ = ["Candidate", "Escape", "Generator", "Oracle", "OracleError", "Outcome", "Result",
           "Sample", "Stats", "run"]
