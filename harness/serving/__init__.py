"""Policies over the network, in openpi's websocket protocol, both ways.

    actdistill serve --policy results/checkpoints/student-simpler-b0.50 --port 8000     # one shell
    actdistill eval --policy ws://127.0.0.1:8000 --suite simpler_widowx --workers 2     # another
    actdistill eval --policy ws://gpu-box:8000 --obs-map openpi-libero --suite libero_spatial

- :mod:`harness.serving.wire`: the bytes on the wire (msgpack, numpy arrays as tagged maps).
- :mod:`harness.serving.obs_map`: how our observation becomes a server's request and its reply our actions.
- :mod:`harness.serving.client`: :class:`~harness.serving.client.WebsocketClientPolicy`, a
  :class:`tasks.base.Policy` that asks a server, and the ``ws://`` policy source of ``actdistill eval``.
- :mod:`harness.serving.server`: :class:`~harness.serving.server.WebsocketPolicyServer`, any of our policies
  served to any openpi client (``actdistill serve``).

The protocol (openpi's ``WebsocketPolicyServer`` / ``WebsocketClientPolicy``): binary websocket frames, each
one msgpack object. On connect the server sends its metadata (a map); then the client sends an observation
map and receives a map with ``"actions"``, a chunk ``(K, D)`` the client executes open loop, plus
``"server_timing": {"infer_ms": ...}``. A server that fails on a request sends the traceback as one *text*
frame and closes the connection (code 1011). ``GET /healthz`` answers 200 without a websocket. openpi has no
episode boundary on the wire; ours is: a new connection starts fresh, and a server whose metadata says
``"accepts_reset": true`` (ours does) takes ``{"reset": true}`` between episodes and answers
``{"reset": true}``. Clients send it only to such servers, so foreign servers never see it.
"""
