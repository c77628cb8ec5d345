"""The HTTP ingest (`emailq serve`): what Logto's HTTP email connector POSTs to. Needs the
`ingest` extra."""
