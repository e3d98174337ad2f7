"""Command-line tools: each one is argparse plus one call into the library packages."""
