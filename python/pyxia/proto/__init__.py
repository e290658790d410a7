"""Generated protobuf modules (do not edit; run scripts/gen_protos.py).

Sources are in ``proto/pyxia/proto``:

- ``client``: Oxia client API (package ``io.oxia.proto.v1``).
- ``client_compat``: the same service under ``io.streamnative.oxia.proto``.
- ``replication``: coordinator and log-replication services (``replication``).
- ``storage``: database records and log entry values (``proto``).
- ``metadata``: cluster configuration and status (``io.oxia.proto.v1``).
- ``oxia_admin``: Oxia's coordinator admin API (``io.oxia.proto.v1.OxiaAdmin``).
- ``admin``: pyxia's own admin and data-server event services (``pyxia.admin.v1``).
- ``tso``: timestamp oracle (``tsoracle.v1``).
"""
