"""One deployment's rules: YAML loading with file and line, the catalog, routing tree and flows."""
