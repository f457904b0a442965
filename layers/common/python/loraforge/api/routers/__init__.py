"""One router per resource; resolver.ROUTER_MODULES lists the ones the app includes."""
