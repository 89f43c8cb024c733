"""Stand-ins for hardware libraries, installed into sys.modules by the tests that need them."""
