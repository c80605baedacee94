"""The trusted core: the image reader, the ABI constants and the verifier.

Everything isolation rests on is in this package, and it imports nothing else of tmebox
(tests/trusted/test_trusted_layering.py checks), so that a reviewer can read it in one sitting.
"""
