"""The coordinator: cluster status in a metadata provider
(:mod:`pyxia.coordinator.metadata`), leader election among coordinators, shard
elections, failure detection, placement."""
