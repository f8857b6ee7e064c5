"""The HTTP API: wire shapes in, one internal request type through, wire shapes out."""
