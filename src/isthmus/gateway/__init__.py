"""Kong's configuration on Isthmus: Kong's entities (``entities``), kept per workspace in the store (``store``),
served by Kong's Admin API (``admin_api``)."""
