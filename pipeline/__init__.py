"""DVC stage entry points: read params.yaml, make one library call, write outputs."""
