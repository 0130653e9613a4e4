"""The Windows console suite: the SAC driver against the SAC simulator, and against real Windows."""
