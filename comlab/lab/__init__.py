"""The lab around the system: plans and runs experiments, owns their processes, turns what the
client saw into records, saves, loads and summarises them."""
