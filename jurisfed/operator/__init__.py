"""The central ML team's and regional IT's view of a running federation."""
