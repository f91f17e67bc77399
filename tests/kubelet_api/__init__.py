"""The facade's kubelet HTTPS API through the real apiserver, with real clients.

kubectl (logs, exec over WebSocket and over SPDY, attach, port-forward, get --raw on the node
proxy) and the Python kubernetes client talk to the apiserver, which talks to the facade the way
it talks to any kubelet: over HTTPS with its kubelet-client certificate, checking the facade's
serving certificate (issued through a kubelet-serving CSR that the test approves, as an operator
would) against the cluster CA. The memory provider answers behind the facade.

The apiserver will not proxy nodes/proxy to a loopback address, so the facade's kubelet listener
lives in a network namespace this package makes (`vmlet_localenv.netns`: a veth pair with a
198.18.0.0/15 benchmarking address), and the nodes advertise that address; all traffic stays on
this machine. The stack starts once for the package (conftest.py).

  conftest                 the test host, the stack, a namespace, a running VM pod
  support                  the provider's name, stream/session/upgrade counts, the serving CA
  test_serving_and_authz   the serving certificate; who may call the kubelet port
  test_logs                logs, followed logs
  test_exec_and_attach     exec (WebSocket, SPDY, terminal, cut off), attach, Python client exec
  test_port_forward        port-forward with kubectl and the Python client
  test_node_proxy          stats summary, resource metrics, pods through the node proxy
"""
