"""Fault injection on the real peers: a controller that kills and restarts each peer exactly as it
was started (`peers`), a seeded workload of VM operations (`workload`), what the IaaS holds, read
directly (`iaas`), and the invariants checked after convergence (`invariants`).
"""
