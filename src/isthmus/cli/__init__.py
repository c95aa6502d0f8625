"""The ``isthmus`` command line."""

import os

# The data-plane agent starts Envoy (fork + exec) from a process that runs gRPC (its rate-limit service, log
# forwarder, the control plane's client). With gRPC's fork support on, the child restarts gRPC's pollers, whose
# descriptors the spawn then closes, and aborts before exec (Envoy "killed by SIGABRT" about one start in seven
# under load). The child never uses gRPC, so fork support is off; gRPC reads this only when it is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
