"""Running the service: on this machine (fitted to it), on a cluster, and checking the backends offline."""
