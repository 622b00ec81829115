"""The REARM network for MMRec: the model class (rearm.py), its layers, losses, raw tables, settings, decay and allocator tuning."""
