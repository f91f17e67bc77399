"""Two tenants on one vmlet, each holding `edit` in its own namespace only (issue 14).

Through the real apiserver, each tenant is a ServiceAccount bound to the built-in `edit`
ClusterRole and to `vmlet-edit` (k8s/base/user-rbac.yaml) in its namespace, and acts only with its
own token, through kubectl, as a user would. The attacker tries every way vmlet offers to name
something in the victim's namespace: Secret references with path traversal (VM spec, pod
annotations, env, volumes), the VM identity annotation, owner references and the VM's labels,
operation pods, Backup/Restore/Migration objects, a claim pre-bound to the victim's volume, and
logs/exec/port-forward (through the apiserver and straight at the kubelet port).

After each attack the test checks, in the IaaS (the memory provider's own API) and in Kubernetes,
that nothing crossed: the victim's VM is where it was, powered on, with the same pod, status,
snapshots and console history; no byte of the victim's Secrets reached anything the attacker owns;
and what the attacker is told does not depend on whether the victim's object exists (each attack
is made twice, against an existing and a missing object, and the answers compared).

The IaaS is the memory provider; the identity attack runs on vSphere on vcsim too, where it was
found. The facade's kubelet API serves from a network namespace (`vmlet_localenv.netns`) so the
apiserver can proxy exec to it, as in tests/kubelet_api/. The stack starts once for the package
(conftest.py).

  conftest                       the test host, the stack, the tenants, the victim's Secrets and VM
  tenancy                        tenants, the IaaS's view, what a tenant is told, comparisons
  test_secret_references         Secret references with path traversal (user data, env, SSH)
  test_identity                  the identity annotation, owner references, VM labels
  test_operations_and_claims     operation pods, Backup/Migration/Restore, a pre-bound claim
  test_kubelet_access            logs/exec/port-forward, the kubelet port with a tenant's token
"""
