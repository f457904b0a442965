"""The `loraforge` command line (dev/user tool; never imported by Lambda code)."""
