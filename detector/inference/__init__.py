"""Test-time components: wrappers with the detector's interface built around a trained model."""
