"""Federation over iroh: the bridge thread, the S2S protocol, convergent channel state and the glue.

See docs/federation.md.
"""
