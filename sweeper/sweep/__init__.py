"""The sweep language (layer 2): the sweep file's typed models (``schema``), loading with grids, zips,
references and ``--set`` overrides (``spec``), the DAG of content-keyed nodes (``plan``), what a key hashes about
the data (``data_id``: the files' checksum, read from a store's manifest for pushed data), re-keying an older
store (``migrate``) and the JSON Schema editors read (``schema_json``). No torch, no Ray."""
