"""The in-memory reference provider: the contract served with no IaaS behind it."""
