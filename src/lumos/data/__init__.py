"""lumos.data"""
