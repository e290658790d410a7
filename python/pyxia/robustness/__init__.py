"""pyxia's robustness suite: a real cluster of processes, a seeded schedule of injected faults,
recorded client histories and checkers that can say "not linearizable".

``pyxia robustness --minutes N --seed S [--positive-control]`` runs it (see the README)."""
