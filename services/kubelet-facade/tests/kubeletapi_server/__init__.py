"""The kubelet API server in process: real TLS, HTTP, SPDY and WebSocket clients; a fake provider
that counts its open streams; fake reviews (the real ones are proven against the apiserver in
tests/kubelet_api/). The serving certificate comes from files here.

  server_env             the fake provider, pods, nodes and reviews; HTTP helpers
  conftest               the fixtures: a CA per test module, a server per test
  test_auth_and_limits   who may call, node endpoints, TLS policy, request-head limit
  test_logs              logs, followed logs
  test_websocket         exec, attach, port-forward over WebSocket
  test_spdy              exec and port-forward over SPDY
"""
