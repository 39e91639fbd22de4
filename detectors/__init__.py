"""gridpatrol.detectors"""
