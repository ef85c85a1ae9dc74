"""Unit tests of the rule engine: checks, commission, rule sets, decisions (pure logic)."""
