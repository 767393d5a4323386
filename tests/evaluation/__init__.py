"""Tests of ummkd.evaluation."""
