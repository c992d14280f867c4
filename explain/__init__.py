"""The LRP engine (rules, composites, canonizers), baselines, relevance filters and metrics."""
